//! Loading an object's programs, and loading one on the maps of a predecessor (shared through
//! scratch pins, checked by map id) before its programs are swapped in behind the links.
use std::{
    collections::HashMap,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    maps::{Map, MapData, SockHash},
    programs::{CgroupSockAddr, SkMsg, SockOps},
    Ebpf, EbpfLoader,
};
use mesh_common::{SockKey, MAP_SOCKS, PROG_CONNECT4, PROG_CONNECT6, PROG_SK_MSG, PROG_SOCK_OPS};

use super::{
    link::{BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT, BPF_CGROUP_SOCK_OPS},
    EbpfError, SHARED_MAPS,
};

/// The kernel id of the map behind `fd`.
pub(super) fn map_id_of_fd(fd: &OwnedFd) -> Result<u32, EbpfError> {
    let name = "(map id)";
    let data = MapData::from_fd(fd.try_clone().map_err(EbpfError::Dup)?)
        .map_err(|source| EbpfError::Map { name, source: source.into() })?;
    Ok(data.info().map_err(|source| EbpfError::Map { name, source: source.into() })?.id())
}

/// Loads every linked program of `bpf` into the kernel (the verifier runs here) and returns each
/// with the hook it attaches to and a descriptor of it.
pub(super) fn load_programs(bpf: &mut Ebpf) -> Result<Vec<(&'static str, u32, OwnedFd)>, EbpfError> {
    let mut out = Vec::new();
    for (name, attach_type) in [
        (PROG_CONNECT4, BPF_CGROUP_INET4_CONNECT),
        (PROG_CONNECT6, BPF_CGROUP_INET6_CONNECT),
        (PROG_SOCK_OPS, BPF_CGROUP_SOCK_OPS),
    ] {
        let err = |source: aya::programs::ProgramError| EbpfError::Program { name, source: source.into() };
        let program = bpf.program_mut(name).ok_or(EbpfError::NoProgram(name))?;
        let fd = if attach_type == BPF_CGROUP_SOCK_OPS {
            let prog: &mut SockOps = program.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            prog.fd().map_err(err)?.as_fd().try_clone_to_owned()
        } else {
            let prog: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            prog.fd().map_err(err)?.as_fd().try_clone_to_owned()
        };
        out.push((name, attach_type, fd.map_err(EbpfError::Dup)?));
    }
    Ok(out)
}

/// Loads the sk_msg program and attaches it to the sockhash (`BPF_PROG_ATTACH`, which replaces
/// a predecessor's program on a shared sockhash; the sockets already in it keep the program they
/// were inserted under). The attachment lives as long as `bpf`, or the map's last user reference.
pub(super) fn attach_sk_msg(bpf: &mut Ebpf) -> Result<(), EbpfError> {
    let name = PROG_SK_MSG;
    let err = |source: aya::programs::ProgramError| EbpfError::Program { name, source: source.into() };
    let socks = bpf.map(MAP_SOCKS).ok_or(EbpfError::NoMap(MAP_SOCKS))?;
    let socks: SockHash<&MapData, SockKey> =
        SockHash::try_from(socks).map_err(|source| EbpfError::Map { name: MAP_SOCKS, source: source.into() })?;
    let fd = socks.fd().try_clone().map_err(EbpfError::Dup)?;
    let program: &mut SkMsg = bpf.program_mut(name).ok_or(EbpfError::NoProgram(name))?.try_into().map_err(err)?;
    program.load().map_err(err)?;
    program.attach(&fd).map_err(err)?;
    Ok(())
}

/// A duplicate descriptor of map `name` that `bpf` still holds (one the agent does not take).
pub(super) fn held_map_fd(bpf: &Ebpf, name: &'static str) -> Result<OwnedFd, EbpfError> {
    map_fd(name, bpf.map(name).ok_or(EbpfError::NoMap(name))?)
}

/// A duplicate descriptor of `map` (one of the kinds the mesh uses).
pub(super) fn map_fd(name: &'static str, map: &Map) -> Result<OwnedFd, EbpfError> {
    match map {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuArray(d) | Map::Array(d) | Map::SockHash(d) => {
            d.fd().as_fd().try_clone_to_owned().map_err(EbpfError::Dup)
        }
        _ => Err(EbpfError::NoMap(name)),
    }
}

/// Loads `object` with the maps in `shared` reused instead of created: pinned for a moment in
/// `scratch` (a bpffs directory) for aya's `EbpfLoader::map_pin_path`, unpinned once loaded.
/// Without a scratch directory every map is created anew.
pub(super) fn load_sharing(
    object: &Path,
    scratch: Option<&Path>,
    shared: &HashMap<String, OwnedFd>,
) -> Result<Ebpf, EbpfError> {
    let share = match scratch {
        Some(dir) if !shared.is_empty() => Some(crate::ebpf_pin::Scratch::pin(dir, shared)?),
        _ => None,
    };
    let mut loader = EbpfLoader::new();
    if let Some(share) = &share {
        for name in SHARED_MAPS.iter().filter(|n| shared.contains_key(**n)) {
            loader.map_pin_path(name, share.path(name));
        }
    }
    let loaded = loader.load_file(object);
    // The loader holds descriptors now; the pins were only its way to find the maps.
    drop(share);
    loaded.map_err(|source| EbpfError::Load { path: object.to_path_buf(), source: source.into() })
}

/// Fails unless the maps `bpf` holds under `names` are the very maps of `theirs` (the loader
/// reused the pinned ones rather than creating its own).
pub(super) fn check_shared(
    theirs: &HashMap<String, OwnedFd>,
    bpf: &Ebpf,
    names: &[&'static str],
) -> Result<(), EbpfError> {
    for name in names {
        let (old, new) = (map_id_of_fd(&theirs[*name])?, map_id_of_fd(&held_map_fd(bpf, name)?)?);
        if old != new {
            return Err(EbpfError::NotShared { name, old, new });
        }
    }
    Ok(())
}

/// Makes each of `links` run the program of the same name in `progs` (`BPF_LINK_UPDATE`,
/// atomic per link).
pub(super) fn swap_programs(
    links: &[(String, OwnedFd)],
    progs: &[(&'static str, u32, OwnedFd)],
) -> Result<(), EbpfError> {
    for (name, _, prog) in progs {
        let (_, link) = links.iter().find(|(l, _)| l == name).ok_or(EbpfError::AdoptMissing(name))?;
        crate::ebpf_upgrade::link_update(link.as_fd(), prog.as_fd())
            .map_err(|source| EbpfError::LinkUpdate { name, source })?;
    }
    Ok(())
}
