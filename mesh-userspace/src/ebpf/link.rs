//! `BPF_LINK_CREATE` called directly: aya does not give out a link's descriptor, and the agent
//! needs it to hand the link to a successor or pin it.
use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

// enum bpf_attach_type (include/uapi/linux/bpf.h).
pub(super) const BPF_CGROUP_SOCK_OPS: u32 = 3;
pub(super) const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub(super) const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub(super) const BPF_LINK_CREATE: libc::c_long = 28;

/// `union bpf_attr` as BPF_LINK_CREATE reads it; the tail must be zero.
#[repr(C)]
pub(super) struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 8],
}

/// Attaches `prog` to the cgroup with a BPF link; the program stays attached while the returned
/// descriptor (or a duplicate of it, in this or another process) is open.
pub(super) fn link_create(prog: impl AsFd, cgroup: &File, attach_type: u32) -> std::io::Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        _rest: [0; 8],
    };
    // SAFETY: bpf(2) reads `size` bytes of a properly initialised attr; the fds are live.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreateAttr,
            std::mem::size_of::<LinkCreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
