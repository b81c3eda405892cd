//! The kernel state pinned in bpffs (`mesh agent --bpf-pin-dir`), so that it outlives an agent
//! that crashes: the links stay attached (the programs keep applying `--fail-mode` to enrolled
//! pods whose listener died with the agent, instead of being detached) and the maps keep the
//! enrollments and VIPs, which the restarted agent re-adopts instead of loading new programs.
//!
//! Layout: `<dir>/layout-<MAP_LAYOUT>/map-<name>` and `.../link-<program>` (bpffs refuses names with a dot). A pinned set of
//! another layout is from an agent version whose maps mean something else: when no agent holds
//! it any more (a cold start found it) its links are detached and its pins removed; when a
//! predecessor of another layout is still running (a handover that cannot adopt) only the pins
//! are removed, and its programs detach when it exits, as without pinning. An agent that stops
//! with no successor removes its pins, so an uninstall leaves nothing attached.
use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use thiserror::Error;

/// `statfs.f_type` of a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where Linux distributions (and Kubernetes nodes) mount bpffs.
const BPFFS_DEFAULT: &str = "/sys/fs/bpf";

// enum bpf_cmd (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` as BPF_OBJ_PIN / BPF_OBJ_GET / BPF_LINK_DETACH read it; the tail is zero.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    _rest: [u64; 8],
}

/// Why the pin directory cannot be used.
#[derive(Debug, Error)]
pub enum PinError {
    /// The directory is not on a bpffs mount (and is not below `/sys/fs/bpf`, which the agent
    /// would mount).
    #[error("--bpf-pin-dir {0} is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf, or use a directory below it)")]
    NotBpffs(PathBuf),
    /// A file system operation on the pin directory failed.
    #[error("pin directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io { path: path.to_path_buf(), source }
}

fn bpf_obj(cmd: libc::c_long, path: &Path, fd: u32) -> io::Result<libc::c_long> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: fd, file_flags: 0, _rest: [0; 8] };
    // SAFETY: bpf(2) reads `size` bytes of a fully initialised attr; the path string outlives
    // the call; the fd (if any) is live.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, &attr as *const ObjAttr, std::mem::size_of::<ObjAttr>() as libc::c_uint)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Pins the map or link `fd` at `path` (replacing a pin already there).
fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    bpf_obj(BPF_OBJ_PIN, path, fd.as_raw_fd() as u32).map(drop)
}

/// Opens the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let fd = bpf_obj(BPF_OBJ_GET, path, 0)?;
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `union bpf_attr` as BPF_LINK_DETACH reads it.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
    _rest: [u32; 19],
}

/// Detaches the link `fd` from its hook whoever else holds it.
fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let attr = LinkDetachAttr { link_fd: fd.as_raw_fd() as u32, _rest: [0; 19] };
    // SAFETY: as in bpf_obj; the attr is fully initialised and the fd is live.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &attr as *const LinkDetachAttr,
            std::mem::size_of::<LinkDetachAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Maps and links found pinned by a previous agent.
pub type Pinned = (HashMap<String, OwnedFd>, Vec<(String, OwnedFd)>);

/// The pin directory of this node's agents.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
    /// The map layout this agent pins under (`ebpf::MAP_LAYOUT`, unless a test pretends).
    layout: u32,
}

impl PinDir {
    /// Opens (creating) `root`, mounting bpffs at `/sys/fs/bpf` first when `root` is below it and
    /// nothing is mounted there (a fresh node; the DaemonSet mounts the host's bpffs).
    pub fn open(root: &Path, layout: u32) -> Result<PinDir, PinError> {
        mount_default_bpffs(root)?;
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        if !is_bpffs(root) {
            return Err(PinError::NotBpffs(root.to_path_buf()));
        }
        Ok(PinDir { root: root.to_path_buf(), layout })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This agent version's directory.
    pub fn layout_dir(&self) -> PathBuf {
        self.layout_dir_of(self.layout)
    }

    fn layout_dir_of(&self, layout: u32) -> PathBuf {
        self.root.join(format!("layout-{layout}"))
    }

    /// The other layouts pinned here, newest first.
    pub fn other_layouts(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut found: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("layout-")?.parse().ok())
            .filter(|l| *l != self.layout)
            .collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        found
    }
}

/// Mounts bpffs at `/sys/fs/bpf` when `path` is below it and nothing is mounted there (a fresh
/// node; the DaemonSet mounts the host's bpffs).
fn mount_default_bpffs(path: &Path) -> Result<(), PinError> {
    let default = Path::new(BPFFS_DEFAULT);
    {
        if path.starts_with(default) && !is_bpffs(default) {
            std::fs::create_dir_all(default).map_err(io_err(default))?;
            nix::mount::mount(Some("bpf"), default, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
                .map_err(|e| PinError::Io { path: default.to_path_buf(), source: e.into() })?;
            tracing::info!(path = BPFFS_DEFAULT, "mounted bpffs");
        }
    }
    Ok(())
}

/// Where a successor can pin its predecessor's maps for the loader: the pin directory, else
/// `/sys/fs/bpf` (mounted when missing); None when there is no bpffs to use.
pub fn scratch_root(pins: Option<&PinDir>) -> Option<PathBuf> {
    if let Some(p) = pins {
        return Some(p.root.clone());
    }
    let default = Path::new(BPFFS_DEFAULT);
    match mount_default_bpffs(default) {
        Ok(()) if is_bpffs(default) => Some(default.to_path_buf()),
        Ok(()) => None,
        Err(e) => {
            tracing::warn!(error = %e, "no bpffs for sharing maps with the predecessor's programs");
            None
        }
    }
}

/// A predecessor's maps pinned where aya's loader finds them (`EbpfLoader::map_pin_path`), so
/// the programs it loads use those very maps; the pins go when this is dropped.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Pins every map of `maps` in a directory of this process below `root`.
    pub fn pin(root: &Path, maps: &HashMap<String, OwnedFd>) -> Result<Scratch, PinError> {
        let dir = root.join(format!("mesh-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let me = Scratch { dir };
        pin_each(&me.dir, "map", maps)?;
        Ok(me)
    }

    /// Where map `name` is pinned.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("map-{name}"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_pins(&self.dir, false);
    }
}

impl PinDir {
    /// Pins every map and link (the same objects again after an adoption: harmless).
    pub fn pin(&self, maps: &[(String, OwnedFd)], links: &[(String, OwnedFd)]) -> Result<(), PinError> {
        let dir = self.layout_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        pin_each(&dir, "map", maps.iter().map(|(n, fd)| (n, fd)))?;
        pin_each(&dir, "link", links.iter().map(|(n, fd)| (n, fd)))
    }

    /// The maps and links a previous agent of this layout left pinned, if it left a complete
    /// set (`maps` and `links` name what a complete set has); an incomplete set is removed.
    pub fn load(&self, maps: &[&str], links: &[&str]) -> Result<Option<Pinned>, PinError> {
        self.load_layout(self.layout, maps, links)
    }

    /// The same for the set pinned by an agent of another `layout` (the maps it had are listed
    /// by what this version migrates from it: see [`crate::ebpf_upgrade::can_migrate_map`]).
    pub fn load_layout(&self, layout: u32, maps: &[&str], links: &[&str]) -> Result<Option<Pinned>, PinError> {
        let dir = self.layout_dir_of(layout);
        if !dir.exists() {
            return Ok(None);
        }
        let mut found_maps = HashMap::new();
        let mut found_links = Vec::new();
        let mut missing = Vec::new();
        for name in maps {
            match obj_get(&dir.join(format!("map-{name}"))) {
                Ok(fd) => {
                    found_maps.insert(name.to_string(), fd);
                }
                Err(_) => missing.push(format!("map-{name}")),
            }
        }
        for name in links {
            match obj_get(&dir.join(format!("link-{name}"))) {
                Ok(fd) => found_links.push((name.to_string(), fd)),
                Err(_) => missing.push(format!("link-{name}")),
            }
        }
        if !missing.is_empty() {
            tracing::warn!(dir = %dir.display(), missing = ?missing, "incomplete pinned eBPF state: detaching and removing it");
            remove_pins(&dir, true);
            return Ok(None);
        }
        Ok(Some((found_maps, found_links)))
    }

    /// Removes the pins of other layouts; with `detach`, nobody holds them any more (a cold
    /// start), so their links are detached first.
    pub fn remove_other_layouts(&self, detach: bool) {
        let ours = self.layout_dir();
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if path != ours && e.file_name().to_string_lossy().starts_with("layout-") {
                tracing::warn!(dir = %path.display(), detach, "removing eBPF state pinned by another agent version");
                remove_pins(&path, detach);
            }
        }
    }

    /// Removes this layout's pins (the agent stops with no successor).
    pub fn remove(&self) {
        remove_pins(&self.layout_dir(), false);
    }
}

/// Pins each descriptor at `dir/<kind>-<name>`, the names [`PinDir`] and [`Scratch`] read back.
fn pin_each<'a>(
    dir: &Path,
    kind: &str,
    items: impl IntoIterator<Item = (&'a String, &'a OwnedFd)>,
) -> Result<(), PinError> {
    for (name, fd) in items {
        let path = dir.join(format!("{kind}-{name}"));
        obj_pin(std::os::fd::AsFd::as_fd(fd), &path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Removes every pin in `dir` and `dir` itself; with `detach`, nobody holds the pinned links any
/// more, so they are detached first.
fn remove_pins(dir: &Path, detach: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if detach && e.file_name().to_string_lossy().starts_with("link-") {
            if let Err(err) = obj_get(&path).and_then(|fd| link_detach(std::os::fd::AsFd::as_fd(&fd))) {
                tracing::warn!(pin = %path.display(), error = %err, "cannot detach a pinned link");
            }
        }
        if let Err(err) = std::fs::remove_file(&path) {
            tracing::warn!(pin = %path.display(), error = %err, "cannot remove a pin");
        }
    }
    let _ = std::fs::remove_dir(dir);
}
