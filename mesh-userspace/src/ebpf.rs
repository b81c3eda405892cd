//! Loads the mesh's eBPF programs, attaches them to the cgroup v2 hierarchy and owns their maps.
//!
//! Programs are attached with BPF links (not legacy `BPF_PROG_ATTACH`), pinned only with
//! `--bpf-pin-dir` (`ebpf_pin`): otherwise the kernel detaches them when the last link fd closes,
//! so an agent that crashes or is killed leaves nothing attached. A clean exit works the same
//! way (there is no `Drop` impl): dropping [`MeshEbpf`], or [`MeshEbpf::detach`], closes the link
//! descriptors, and the kernel detaches the programs unless they are pinned or a successor holds
//! duplicates.
//!
//! A successor agent takes the link and map descriptors over (see `handover`): the same links
//! stay attached and the same maps keep the enrollments, VIPs and original destinations; it then
//! swaps its own programs in behind those links (`BPF_LINK_UPDATE`), on the same maps or, across
//! a layout change, on maps the old entries were migrated into (`ebpf_upgrade`). The links are
//! created here with `BPF_LINK_CREATE` directly because aya does not give out a link's descriptor.
use std::{
    collections::HashMap,
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    Ebpf,
};
use aya_log::EbpfLogger;
use mesh_common::{
    Enrollment, OriginalDst, ServiceKey, ServiceValue, TupleKey, MAP_CONFIG, MAP_ENROLLED, MAP_EVENT_STATS,
    MAP_LOG_LEVEL, MAP_ORIG_BY_COOKIE, MAP_ORIG_BY_TUPLE, MAP_SERVICES, MAP_SK_PEERS, MAP_SK_TCP, MAP_SK_UPSTREAM,
    MAP_SOCKS, MAP_STATS, PROG_CONNECT4, PROG_CONNECT6, PROG_SOCK_OPS,
};

use crate::ebpf_log::{Forwarder, PodNames};

mod error;
mod link;
mod load;

pub use error::EbpfError;
use link::link_create;
use load::{attach_sk_msg, check_shared, held_map_fd, load_programs, load_sharing, map_fd, swap_programs};

/// Version of the maps' names and key/value layouts (mesh-common). A successor adopts the
/// predecessor's maps and links only when this matches; bump it whenever a map changes.
/// 2: `MESH_CONFIG` (fail mode) added, `MESH_EVENT_STATS` grew the fail-open/closed counters.
/// 3: `MESH_ORIG_BY_COOKIE` handed over and pinned too, so a successor's programs can share it.
/// 4: the sk_msg bypass: `MESH_SOCKS`, `MESH_SK_TCP`, `MESH_SK_UPSTREAM` and `MESH_SK_PEERS` added (handed over and pinned: a socket's
/// queued bytes would go with a sockhash that is freed), `MESH_CONFIG` and `MESH_STATS` grew.
/// A successor migrates the maps of the layouts [`crate::ebpf_upgrade`] has a converter for.
pub const MAP_LAYOUT: u32 = 4;

/// The programs, each attached by one link.
pub const LINKED_PROGRAMS: [&str; 3] = [PROG_CONNECT4, PROG_CONNECT6, PROG_SOCK_OPS];

/// The maps the agent reads and writes (the programs hold the others).
pub const USER_MAPS: [&str; 8] = [
    MAP_ENROLLED,
    MAP_SERVICES,
    MAP_ORIG_BY_TUPLE,
    MAP_STATS,
    MAP_EVENT_STATS,
    MAP_LOG_LEVEL,
    MAP_CONFIG,
    MAP_SK_UPSTREAM,
];

/// The maps only the programs use, which a successor must share all the same: connect4 writes
/// the cookie map and sock_ops reads it (either may be the old program or the new one while the
/// links are swapped); the sockhash holds sockets whose queued bytes are freed with it; the
/// bypass's bookkeeping.
pub const PROGRAM_MAPS: [&str; 4] = [MAP_ORIG_BY_COOKIE, MAP_SOCKS, MAP_SK_TCP, MAP_SK_PEERS];

/// Every map a successor's programs must share with the predecessor's: the user-space maps plus
/// [`PROGRAM_MAPS`].
pub const SHARED_MAPS: [&str; USER_MAPS.len() + PROGRAM_MAPS.len()] = shared_maps();

const fn shared_maps() -> [&'static str; USER_MAPS.len() + PROGRAM_MAPS.len()] {
    let mut out = [""; USER_MAPS.len() + PROGRAM_MAPS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = if i < USER_MAPS.len() { USER_MAPS[i] } else { PROGRAM_MAPS[i - USER_MAPS.len()] };
        i += 1;
    }
    out
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
    /// connect4/6 runs on IPv4 (or IPv4-mapped) destinations, from any process below the cgroup root.
    pub connects_seen: u64,
    /// Connects rewritten to the proxy.
    pub connects_redirected: u64,
    /// Original destinations sock_ops moved to their tuple key.
    pub established_indexed: u64,
    /// Enrolled pods' connects to an address:port with no service entry (not redirected).
    pub connects_no_service: u64,
    /// Established connections to the proxy port with no original-destination record.
    pub orig_dst_missing: u64,
    /// Inserts into an original-destination map that failed.
    pub map_insert_failures: u64,
    /// Other helper or map failures in the programs.
    pub program_errors: u64,
    /// Enrolled pods' VIP connects with no listener at the redirect target, left to their
    /// original destination (fail open).
    pub connects_fail_open: u64,
    /// The same, refused because the node is configured to fail closed.
    pub connects_fail_closed: u64,
    /// Sockets put in the sk_msg bypass's sockhash (each end of a bypassed connection counts).
    pub sockets_bypassed: u64,
    /// sendmsg calls on a bypassed socket whose data went straight to the peer socket.
    pub sk_msg_redirected: u64,
    /// sendmsg calls on a bypassed socket whose data went through TCP (the peer was not in the
    /// sockhash yet, or the socket's data had gone through TCP before).
    pub sk_msg_tcp: u64,
    /// Pods' ends of the proxy's upstream connections put in the sockhash.
    pub upstream_sockets_bypassed: u64,
}

/// What the programs do with an enrolled pod's connect to a service VIP when nothing listens at
/// the redirect target in the pod (the agent is dead, or the pod's listener is gone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// The connect goes to its original destination, outside the mesh (kube-proxy or the CNI
    /// serves the VIP on a cluster).
    #[default]
    Open,
    /// The connect fails (EPERM) rather than bypass the mesh's routing and policy.
    Closed,
}

impl FailMode {
    /// The value the programs read (`mesh_common::config`).
    fn map_value(self) -> u32 {
        match self {
            FailMode::Open => mesh_common::config::FAIL_OPEN,
            FailMode::Closed => mesh_common::config::FAIL_CLOSED,
        }
    }
}

/// The kernel side as the agent holds it: the attached programs' links and the maps it reads and
/// writes. Dropping it closes the link descriptors, which detaches the programs unless a
/// successor holds duplicates.
pub struct MeshEbpf {
    /// The loaded object (None when the maps and links were handed over by a predecessor).
    /// Behind a lock because a successor swaps its own programs in after it adopted (see
    /// [`MeshEbpf::replace_programs`]).
    bpf: Mutex<Option<Ebpf>>,
    /// The attachments: closing the last descriptor of a link (ours, or a successor's) detaches it.
    links: Vec<(String, OwnedFd)>,
    /// Duplicates of the user-space maps' descriptors, to hand over.
    map_fds: Vec<(String, OwnedFd)>,
    enrolled: Mutex<BpfHashMap<MapData, u64, Enrollment>>,
    services: Mutex<BpfHashMap<MapData, ServiceKey, ServiceValue>>,
    orig_by_tuple: Mutex<BpfHashMap<MapData, TupleKey, OriginalDst>>,
    stats: PerCpuArray<MapData, u64>,
    event_stats: PerCpuArray<MapData, u64>,
    log_level: Mutex<Array<MapData, u32>>,
    config: Mutex<Array<MapData, u32>>,
    /// Upstream sockets announced to sock_ops by cookie (see `mesh_common::MAP_SK_UPSTREAM`).
    sk_upstream: Mutex<BpfHashMap<MapData, u64, u8>>,
    /// Taken by [`MeshEbpf::forward_kernel_logs`].
    logger: Mutex<Option<EbpfLogger<Forwarder>>>,
    /// Why this agent's sk_msg program is not attached to the sockhash (the kernel lacks
    /// CONFIG_NET_SOCK_MSG, or refused the program); None when it is, or when the predecessor's
    /// program, adopted, still is.
    sk_msg_unavailable: Mutex<Option<String>>,
    names: Arc<Mutex<PodNames>>,
    cgroup_root: PathBuf,
}

impl MeshEbpf {
    /// Loads the object and attaches connect4 and sock_ops to `cgroup_root` (normally the root
    /// of the cgroup v2 hierarchy, so every pod below it is seen; only enrolled cgroups are acted on).
    pub fn load_and_attach(object: &Path, cgroup_root: &Path) -> Result<MeshEbpf, EbpfError> {
        let mut bpf = Ebpf::load_file(object)
            .map_err(|source| EbpfError::Load { path: object.to_path_buf(), source: source.into() })?;
        let cgroup =
            File::open(cgroup_root).map_err(|source| EbpfError::Cgroup { path: cgroup_root.to_path_buf(), source })?;
        let mut links = Vec::new();
        for (name, attach_type, prog) in load_programs(&mut bpf)? {
            // A cgroup link always coexists with other programs on the same hook (a CNI's own
            // connect4); flags 0 is the only mode the kernel accepts for links (BPF_F_ALLOW_MULTI
            // is EINVAL for links on kernel 6.18, still so through aya 0.14's attach).
            let link = link_create(&prog, &cgroup, attach_type).map_err(|source| EbpfError::Link { name, source })?;
            links.push((name.to_owned(), link));
        }
        let me = Self::from_loaded(bpf, links, cgroup_root)?;
        tracing::info!(object = %object.display(), cgroup = %cgroup_root.display(), "eBPF programs attached");
        Ok(me)
    }

    /// Wraps a loaded object whose programs run behind `links`.
    fn from_loaded(mut bpf: Ebpf, links: Vec<(String, OwnedFd)>, cgroup_root: &Path) -> Result<MeshEbpf, EbpfError> {
        let program_maps = PROGRAM_MAPS
            .iter()
            .map(|n| Ok::<_, EbpfError>((n.to_string(), held_map_fd(&bpf, n)?)))
            .collect::<Result<Vec<_>, _>>()?;
        let sk_msg = attach_sk_msg(&mut bpf).err();
        let mut maps = HashMap::new();
        for name in USER_MAPS {
            maps.insert(name, bpf.take_map(name).ok_or(EbpfError::NoMap(name))?);
        }
        let names = Arc::new(Mutex::new(PodNames::default()));
        let logger = EbpfLogger::init_with_logger(&mut bpf, Forwarder { names: names.clone() })?;
        let mut me = Self::from_maps(maps, links, cgroup_root, names, Some(logger))?;
        me.map_fds.extend(program_maps);
        me.set_sk_msg_unavailable(sk_msg);
        me.bpf = Mutex::new(Some(bpf));
        Ok(me)
    }

    /// Swaps this agent's own programs in behind the links it adopted (same map layout): they are
    /// loaded against the very maps the links' programs use (the map descriptors are pinned for a
    /// moment in `scratch`, a bpffs directory, for aya's loader to reuse, then unpinned; the map
    /// ids are checked) and replace the old ones by `BPF_LINK_UPDATE`, atomically per link.
    /// Nothing in the kernel changes unless every program passed the verifier. The kernel log
    /// records then come from this agent's own ring buffer ([`MeshEbpf::forward_kernel_logs`]
    /// again to forward them).
    pub fn replace_programs(&self, object: &Path, scratch: &Path) -> Result<(), EbpfError> {
        let mut maps = HashMap::new();
        for (name, fd) in &self.map_fds {
            maps.insert(name.clone(), fd.try_clone().map_err(EbpfError::Dup)?);
        }
        if let Some(missing) = SHARED_MAPS.iter().find(|m| !maps.contains_key(**m)) {
            return Err(EbpfError::AdoptMissing(missing));
        }
        let mut bpf = load_sharing(object, Some(scratch), &maps)?;
        let progs = load_programs(&mut bpf)?;
        check_shared(&maps, &bpf, &SHARED_MAPS)?;
        swap_programs(&self.links, &progs)?;
        // After the swap: the old sk_msg program stays on the sockhash until ours replaces it.
        self.set_sk_msg_unavailable(attach_sk_msg(&mut bpf).err());
        let logger = EbpfLogger::init_with_logger(&mut bpf, Forwarder { names: self.names.clone() })?;
        *lock(&self.logger) = Some(logger);
        *lock(&self.bpf) = Some(bpf);
        tracing::info!(object = %object.display(), maps = "shared", "this agent's eBPF programs now run behind the adopted links (BPF_LINK_UPDATE)");
        Ok(())
    }

    /// Takes over the links of a predecessor of another map layout (handed over, or pinned by an
    /// agent that died) and runs this agent's programs behind them on fresh maps, into which the
    /// predecessor's entries are migrated first ([`crate::ebpf_upgrade`]); the links are then
    /// swapped by `BPF_LINK_UPDATE` and the original-destination maps copied once more. Nothing
    /// in the kernel changes unless every program passed the verifier and every map migrated.
    pub fn migrate_and_take_over(
        object: &Path,
        maps: &HashMap<String, OwnedFd>,
        links: &[(String, OwnedFd)],
        layouts: (u32, u32),
        scratch: Option<&Path>,
        cgroup_root: &Path,
    ) -> Result<MeshEbpf, EbpfError> {
        let (theirs, ours) = layouts;
        if !crate::ebpf_upgrade::can_migrate(theirs) {
            return Err(EbpfError::NoMigration { theirs, ours });
        }
        // A map whose bytes mean the same in both layouts is shared, not copied: the
        // predecessor's programs (and its proxy, still accepting until this agent is ready) and
        // ours then see the same entries, with no window between a copy and the swap.
        let unchanged: HashMap<String, OwnedFd> = match scratch {
            Some(_) => maps
                .iter()
                .filter(|(name, _)| crate::ebpf_upgrade::is_unchanged(theirs, name))
                .map(|(name, fd)| Ok((name.clone(), fd.try_clone().map_err(EbpfError::Dup)?)))
                .collect::<Result<_, EbpfError>>()?,
            None => HashMap::new(),
        };
        let mut bpf = load_sharing(object, scratch, &unchanged)?;
        let progs = load_programs(&mut bpf)?;
        let (shared, copied): (Vec<&'static str>, Vec<&'static str>) =
            SHARED_MAPS.into_iter().partition(|n| unchanged.contains_key(*n));
        check_shared(&unchanged, &bpf, &shared)?;
        Self::migrate_from(theirs, maps, &bpf, &copied)?;
        swap_programs(links, &progs)?;
        // What the predecessor's programs recorded between the copy and the swap.
        let again: Vec<&'static str> =
            [MAP_ORIG_BY_COOKIE, MAP_ORIG_BY_TUPLE].into_iter().filter(|n| copied.contains(n)).collect();
        Self::migrate_from(theirs, maps, &bpf, &again)?;
        let links = links
            .iter()
            .map(|(n, fd)| Ok((n.clone(), fd.try_clone().map_err(EbpfError::Dup)?)))
            .collect::<Result<Vec<_>, EbpfError>>()?;
        let me = Self::from_loaded(bpf, links, cgroup_root)?;
        tracing::info!(
            object = %object.display(),
            from_layout = theirs,
            shared = ?shared,
            copied = ?copied,
            "this agent's eBPF programs now run behind the links of a predecessor of another map layout (BPF_LINK_UPDATE)"
        );
        Ok(me)
    }

    /// Copies the entries of the predecessor's maps named in `names` (those it handed over and
    /// layout `from` carries) into this object's maps.
    fn migrate_from(
        from: u32,
        maps: &HashMap<String, OwnedFd>,
        bpf: &Ebpf,
        names: &[&'static str],
    ) -> Result<(), EbpfError> {
        for name in names {
            let Some(old) = maps.get(*name) else { continue };
            if !crate::ebpf_upgrade::can_migrate_map(from, name) {
                continue;
            }
            let new = held_map_fd(bpf, name)?;
            let n = crate::ebpf_upgrade::migrate(from, name, old.as_fd(), new.as_fd())?;
            tracing::debug!(map = name, entries = n, from_layout = from, "map entries migrated");
        }
        Ok(())
    }

    /// Takes over a predecessor's maps and links (descriptors received in a handover, or pinned):
    /// nothing is loaded or attached, the kernel keeps running the same programs on the same maps
    /// until [`MeshEbpf::replace_programs`] swaps this agent's in.
    pub fn adopt(
        mut maps: HashMap<String, OwnedFd>,
        links: Vec<(String, OwnedFd)>,
        cgroup_root: &Path,
    ) -> Result<MeshEbpf, EbpfError> {
        let mut typed = HashMap::new();
        for name in USER_MAPS {
            let fd = maps.remove(name).ok_or(EbpfError::AdoptMissing(name))?;
            let data = MapData::from_fd(fd).map_err(|source| EbpfError::Adopt { name, source: source.into() })?;
            let map = match name {
                MAP_ORIG_BY_TUPLE | MAP_SK_UPSTREAM => Map::LruHashMap(data),
                MAP_STATS | MAP_EVENT_STATS => Map::PerCpuArray(data),
                MAP_LOG_LEVEL | MAP_CONFIG => Map::Array(data),
                _ => Map::HashMap(data),
            };
            typed.insert(name, map);
        }
        // Not used here, but a successor of ours needs them to run its programs on these maps.
        let program_maps: Vec<(String, OwnedFd)> =
            PROGRAM_MAPS.iter().filter_map(|n| Some((n.to_string(), maps.remove(*n)?))).collect();
        tracing::info!(links = links.len(), "eBPF maps and links taken over from the previous agent");
        // The kernel log ring buffer stays with the programs' loader: after a handover the
        // events are counted (MAP_EVENT_STATS) but not forwarded as log lines.
        let mut me = Self::from_maps(typed, links, cgroup_root, Arc::new(Mutex::new(PodNames::default())), None)?;
        me.map_fds.extend(program_maps);
        Ok(me)
    }

    fn from_maps(
        mut maps: HashMap<&'static str, Map>,
        links: Vec<(String, OwnedFd)>,
        cgroup_root: &Path,
        names: Arc<Mutex<PodNames>>,
        logger: Option<EbpfLogger<Forwarder>>,
    ) -> Result<MeshEbpf, EbpfError> {
        let mut map_fds = Vec::new();
        for (name, map) in &maps {
            map_fds.push((name.to_string(), map_fd(name, map)?));
        }
        let mut take = |name: &'static str| maps.remove(name).ok_or(EbpfError::NoMap(name));
        let enrolled = hash(MAP_ENROLLED, take(MAP_ENROLLED)?)?;
        let services = hash(MAP_SERVICES, take(MAP_SERVICES)?)?;
        let orig_by_tuple = hash(MAP_ORIG_BY_TUPLE, take(MAP_ORIG_BY_TUPLE)?)?;
        let stats = PerCpuArray::try_from(take(MAP_STATS)?)
            .map_err(|source| EbpfError::Map { name: MAP_STATS, source: source.into() })?;
        let event_stats = PerCpuArray::try_from(take(MAP_EVENT_STATS)?)
            .map_err(|source| EbpfError::Map { name: MAP_EVENT_STATS, source: source.into() })?;
        let log_level = Array::try_from(take(MAP_LOG_LEVEL)?)
            .map_err(|source| EbpfError::Map { name: MAP_LOG_LEVEL, source: source.into() })?;
        let config = Array::try_from(take(MAP_CONFIG)?)
            .map_err(|source| EbpfError::Map { name: MAP_CONFIG, source: source.into() })?;
        let sk_upstream = hash(MAP_SK_UPSTREAM, take(MAP_SK_UPSTREAM)?)?;
        Ok(MeshEbpf {
            bpf: Mutex::new(None),
            links,
            map_fds,
            enrolled: Mutex::new(enrolled),
            services: Mutex::new(services),
            orig_by_tuple: Mutex::new(orig_by_tuple),
            stats,
            event_stats,
            log_level: Mutex::new(log_level),
            config: Mutex::new(config),
            sk_upstream: Mutex::new(sk_upstream),
            logger: Mutex::new(logger),
            sk_msg_unavailable: Mutex::new(None),
            names,
            cgroup_root: cgroup_root.to_path_buf(),
        })
    }

    /// Duplicates of every map and link descriptor, with their roles, for a successor. Ours stay
    /// open: until the successor is ready, this agent keeps the programs attached itself.
    pub fn export(&self) -> Result<Vec<(crate::handover::Role, OwnedFd)>, EbpfError> {
        use crate::handover::Role;
        let mut out = Vec::new();
        for (name, fd) in &self.map_fds {
            out.push((Role::BpfMap { name: name.clone() }, fd.try_clone().map_err(EbpfError::Dup)?));
        }
        for (program, fd) in &self.links {
            out.push((Role::BpfLink { program: program.clone() }, fd.try_clone().map_err(EbpfError::Dup)?));
        }
        Ok(out)
    }

    /// Pins every map and link in `dir` (see [`crate::ebpf_pin`]).
    pub fn pin(&self, dir: &crate::ebpf_pin::PinDir) -> Result<(), crate::ebpf_pin::PinError> {
        dir.pin(&self.map_fds, &self.links)
    }

    /// Removes from the enrollment map every cgroup not in `keep`: after re-adopting pinned maps,
    /// the pods that left while no agent ran.
    pub fn prune_enrolled(&self, keep: &std::collections::HashSet<u64>) -> Result<usize, EbpfError> {
        let mut map = lock(&self.enrolled);
        let stale: Vec<u64> = map.keys().filter_map(Result::ok).filter(|k| !keep.contains(k)).collect();
        for k in &stale {
            lock(&self.names).remove(*k);
            match map.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(EbpfError::Map { name: MAP_ENROLLED, source: source.into() }),
            }
        }
        Ok(stale.len())
    }

    /// Sets the level the kernel programs log at (`mesh_common::log_level`); takes effect on the
    /// next program run, nothing is reloaded.
    pub fn set_log_level(&self, level: u32) -> Result<(), EbpfError> {
        lock(&self.log_level)
            .set(0, level, 0)
            .map_err(|source| EbpfError::Map { name: MAP_LOG_LEVEL, source: source.into() })
    }

    /// Sets the node's fail mode; takes effect on the next connect. A successor that adopted the
    /// maps writes its own setting, so the last agent started decides.
    pub fn set_fail_mode(&self, mode: FailMode) -> Result<(), EbpfError> {
        lock(&self.config)
            .set(mesh_common::config::FAIL_MODE, mode.map_value(), 0)
            .map_err(|source| EbpfError::Map { name: MAP_CONFIG, source: source.into() })
    }

    /// Turns the sk_msg bypass on or off for connections established from now on (a connection
    /// keeps the path it started with). Fails, leaving it off, when this agent's sk_msg program
    /// could not be attached.
    pub fn set_sk_msg_bypass(&self, on: bool) -> Result<(), EbpfError> {
        if on {
            if let Some(why) = lock(&self.sk_msg_unavailable).clone() {
                return Err(EbpfError::SkMsgUnavailable(why));
            }
        }
        lock(&self.config)
            .set(mesh_common::config::SK_MSG_BYPASS, u32::from(on), 0)
            .map_err(|source| EbpfError::Map { name: MAP_CONFIG, source: source.into() })
    }

    /// Announces the proxy's upstream socket `cookie` (`SO_COOKIE`), about to connect to a pod
    /// on this node: sock_ops puts both ends of the connection in the sockhash as they are
    /// established.
    pub fn expect_upstream(&self, cookie: u64) -> Result<(), EbpfError> {
        lock(&self.sk_upstream)
            .insert(cookie, 1, 0)
            .map_err(|source| EbpfError::Map { name: MAP_SK_UPSTREAM, source: source.into() })
    }

    /// Whether this agent's sk_msg program is attached (or a predecessor's adopted one is).
    pub fn sk_msg_available(&self) -> bool {
        lock(&self.sk_msg_unavailable).is_none()
    }

    fn set_sk_msg_unavailable(&self, why: Option<EbpfError>) {
        if let Some(e) = &why {
            // A warning only matters with --sk-msg-bypass on: the agent warns then (kernel.rs).
            tracing::debug!(error = %e, "the sk_msg bypass is unavailable on this node");
        }
        *lock(&self.sk_msg_unavailable) = why.map(|e| e.to_string());
    }

    /// Starts the task that forwards the kernel's log records into `tracing` (see
    /// [`crate::ebpf_log`]). Only the first call starts one.
    pub fn forward_kernel_logs(&self) -> std::io::Result<()> {
        let Some(logger) = lock(&self.logger).take() else { return Ok(()) };
        // SAFETY: the fd is the ring buffer map's, owned by `logger`, which the AsyncFd owns for
        // its whole life; EbpfLogger::as_raw_fd always returns that same fd.
        let mut logger =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        tokio::spawn(async move {
            loop {
                let mut guard = match logger.readable_mut().await {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(error = %e, "kernel log ring buffer cannot be polled; kernel events are no longer forwarded");
                        return;
                    }
                };
                // aya-log's flush unwraps its decoder's result; a malformed record must not take
                // the agent down. The record is consumed either way, so the next flush goes on.
                let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| guard.get_inner_mut().flush()));
                if flushed.is_err() {
                    tracing::warn!(target: "mesh::ebpf", "dropped a kernel log record aya-log could not decode");
                }
                guard.clear_ready();
            }
        });
        Ok(())
    }

    /// Enrolls a pod: its cgroup id into the kernel map, and its name for the kernel's log events.
    pub fn enroll(
        &self,
        cgroup_id: u64,
        netns_cookie: u64,
        enrollment: Enrollment,
        name: String,
    ) -> Result<(), EbpfError> {
        // The name first: the kernel may log for this cgroup as soon as it is in the map.
        lock(&self.names).insert(cgroup_id, netns_cookie, name);
        let inserted = lock(&self.enrolled).insert(cgroup_id, enrollment, 0);
        inserted.map_err(|source| {
            lock(&self.names).remove(cgroup_id);
            EbpfError::Map { name: MAP_ENROLLED, source: source.into() }
        })
    }

    /// Removes a pod from the enrollment map (its new connects are no longer redirected); removing a
    /// pod that is not there is not an error.
    pub fn unenroll(&self, cgroup_id: u64) -> Result<(), EbpfError> {
        lock(&self.names).remove(cgroup_id);
        match lock(&self.enrolled).remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(EbpfError::Map { name: MAP_ENROLLED, source: source.into() }),
        }
    }

    /// Makes the service map exactly `wanted`: inserts new VIPs before removing stale ones so a
    /// live VIP is never briefly absent.
    pub fn sync_services(&self, wanted: &std::collections::HashMap<ServiceKey, ServiceValue>) -> Result<(), EbpfError> {
        let mut map = lock(&self.services);
        let err = |source: aya::maps::MapError| EbpfError::Map { name: MAP_SERVICES, source: source.into() };
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

    /// The programs' counters, summed over CPUs, for `/metrics`.
    pub fn stats(&self) -> KernelStats {
        let sum = |map: &PerCpuArray<MapData, u64>, idx: u32| {
            map.get(&idx, 0).map(|v| v.iter().fold(0u64, |a, b| a.wrapping_add(*b))).unwrap_or(0)
        };
        use mesh_common::{events, stats};
        KernelStats {
            connects_seen: sum(&self.stats, stats::CONNECT_SEEN),
            connects_redirected: sum(&self.stats, stats::CONNECT_REDIRECTED),
            established_indexed: sum(&self.stats, stats::ESTABLISHED_INDEXED),
            connects_no_service: sum(&self.event_stats, events::CONNECT_NO_SERVICE),
            orig_dst_missing: sum(&self.event_stats, events::ORIG_DST_MISSING),
            map_insert_failures: sum(&self.event_stats, events::MAP_INSERT_FAILED),
            program_errors: sum(&self.event_stats, events::PROGRAM_ERROR),
            connects_fail_open: sum(&self.event_stats, events::FAIL_OPEN),
            connects_fail_closed: sum(&self.event_stats, events::FAIL_CLOSED),
            sockets_bypassed: sum(&self.stats, stats::SOCKETS_BYPASSED),
            sk_msg_redirected: sum(&self.stats, stats::SK_MSG_REDIRECTED),
            sk_msg_tcp: sum(&self.stats, stats::SK_MSG_TCP),
            upstream_sockets_bypassed: sum(&self.stats, stats::UPSTREAM_PEERS_BYPASSED),
        }
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Detaches the programs now (also happens on drop), unless a successor holds the links.
    pub fn detach(self) {
        drop(self);
        tracing::info!("eBPF programs detached");
    }
}

fn hash<K: aya::Pod, V: aya::Pod>(name: &'static str, map: Map) -> Result<BpfHashMap<MapData, K, V>, EbpfError> {
    BpfHashMap::try_from(map).map_err(|source| EbpfError::Map { name, source: source.into() })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a map handle cannot leave the kernel map inconsistent; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `SO_NETNS_COOKIE`: the same cookie `bpf_get_netns_cookie` returns in the kernel.
pub fn netns_cookie_of(fd: &impl AsRawFd) -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    socket_option_u64(fd, SO_NETNS_COOKIE)
}

/// `SO_COOKIE`: the id `bpf_get_socket_cookie` returns for this socket in the kernel (assigned
/// when the socket is created, so it is known before `connect()`).
pub fn socket_cookie_of(fd: &impl AsRawFd) -> std::io::Result<u64> {
    const SO_COOKIE: libc::c_int = 57;
    socket_option_u64(fd, SO_COOKIE)
}

/// A `SOL_SOCKET` option whose value is a `u64`.
fn socket_option_u64(fd: &impl AsRawFd, option: libc::c_int) -> std::io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, pointer and length for an 8-byte option.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, option, (&mut value as *mut u64).cast(), &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::FailMode;

    #[test]
    fn fail_mode_values_are_what_the_programs_read() {
        use mesh_common::config;
        // A map the agent has not written yet is zeroed: that must mean the default, open.
        assert_eq!(config::FAIL_OPEN, 0);
        assert_eq!(FailMode::default(), FailMode::Open);
        assert_eq!(FailMode::Open.map_value(), config::FAIL_OPEN);
        assert_eq!(FailMode::Closed.map_value(), config::FAIL_CLOSED);
        assert_eq!(FailMode::from_str("closed", false), Ok(FailMode::Closed));
        assert_eq!(FailMode::from_str("open", false), Ok(FailMode::Open));
        assert!(FailMode::from_str("half", false).is_err());
    }
}
