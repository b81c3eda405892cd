//! Hitless restart: a new agent takes the running agent's listening sockets and kernel objects
//! over a Unix socket, then tells it to drain.
//!
//! Protocol (one connection, new agent = client):
//! 1. the old agent sends a 4-byte big-endian length and a JSON [`Header`] naming, in order,
//!    what each file descriptor is ([`Role`]);
//! 2. then the descriptors themselves, at most [`MAX_FDS_PER_MESSAGE`] per `sendmsg`, each batch
//!    attached (SCM_RIGHTS) to one byte `F`;
//! 3. the new agent adopts them (no bind: the kernel keeps queueing connections on the very same
//!    sockets, so there is no window in which a connect is refused), becomes ready and writes one
//!    byte `R`; only then does the old agent stop accepting and drain. Until `R` arrives the old
//!    agent keeps every socket open and keeps serving: a successor that dies half-way changes
//!    nothing.
use std::{
    collections::HashMap,
    io::{IoSlice, IoSliceMut, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{fs::MetadataExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bumped when the header or the meaning of a role changes.
pub const PROTOCOL: u32 = 1;
/// `/run` is a tmpfs, so a socket left by a crashed agent cannot survive a reboot; in the
/// DaemonSet `/run/mesh` is a hostPath, the one directory the old and the new agent pod (each in
/// its own mount namespace) both see.
pub const DEFAULT_SOCKET: &str = "/run/mesh/handover.sock";
/// The kernel's SCM_MAX_FD is 253 descriptors per message.
pub const MAX_FDS_PER_MESSAGE: usize = 250;
/// How long a transfer may stall before the new agent gives up.
const IO_TIMEOUT: Duration = crate::settings::FIXED.handover_io_timeout;
const MAX_HEADER: u32 = 64 << 20;

/// What a handed-over file descriptor is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Role {
    /// The in-pod listener (127.0.0.1:15001 in the pod's netns) of an enrolled pod.
    Pod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
        /// The pod's network namespace (the successor checks it is still the pod's).
        netns: PathBuf,
        /// The pod's cgroup.
        cgroup: PathBuf,
    },
    /// A NodePort ingress listener.
    NodePort {
        /// The node port.
        port: u16,
    },
    /// A Gateway ingress listener.
    Gateway {
        /// The listener port.
        port: u16,
        /// The Gateway's namespace.
        namespace: String,
        /// The Gateway's name.
        name: String,
    },
    /// The admin listener (`/ready`, `/metrics`...).
    Admin,
    /// An eBPF map, by its name in the object.
    BpfMap {
        /// The map's name in the eBPF object.
        name: String,
    },
    /// A BPF link attaching a program to the cgroup hierarchy; the program stays attached for as
    /// long as any process holds the link.
    BpfLink {
        /// The program's name in the eBPF object.
        program: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    protocol: u32,
    /// The sender's eBPF map layout version ([`crate::ebpf::MAP_LAYOUT`]).
    map_layout: u32,
    pid: u32,
    roles: Vec<Role>,
}

/// Why a handover could not happen (the agent then starts cold, or keeps serving).
#[derive(Debug, Error)]
pub enum HandoverError {
    /// The handover socket could not be bound or connected.
    #[error("handover socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("handover transfer: {0}")]
    Io(#[from] std::io::Error),
    /// Passing descriptors (SCM_RIGHTS) failed.
    #[error("handover transfer: {0}")]
    Sys(#[from] nix::Error),
    /// The description of the descriptors is not valid JSON.
    #[error("handover description: {0}")]
    Json(#[from] serde_json::Error),
    /// The other agent speaks another version of the protocol.
    #[error("the running agent speaks handover protocol {theirs}, this one {PROTOCOL}; stop it first (no hitless upgrade across this version)")]
    Protocol {
        /// The other agent's protocol version.
        theirs: u32,
    },
    /// The other agent sent something this protocol does not allow.
    #[error("handover: {0}")]
    Malformed(String),
}

/// What the old agent hands over: each descriptor with its role.
pub struct Offer {
    /// The sender's eBPF map layout version.
    pub map_layout: u32,
    /// The descriptors (duplicates) and what each is.
    pub items: Vec<(Role, OwnedFd)>,
}

/// Sends `offer` on `stream` (blocking). The descriptors are duplicates: the sender's own stay
/// open and serving.
pub fn send(stream: &UnixStream, offer: &Offer) -> Result<(), HandoverError> {
    let header = Header {
        protocol: PROTOCOL,
        map_layout: offer.map_layout,
        pid: std::process::id(),
        roles: offer.items.iter().map(|(r, _)| r.clone()).collect(),
    };
    let json = serde_json::to_vec(&header)?;
    let len = u32::try_from(json.len()).ok().filter(|l| *l <= MAX_HEADER).ok_or_else(|| {
        HandoverError::Malformed(format!("description of {} descriptors too large", offer.items.len()))
    })?;
    let mut w = stream;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&json)?;
    let fds: Vec<RawFd> = offer.items.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    for batch in fds.chunks(MAX_FDS_PER_MESSAGE) {
        sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(b"F")],
            &[ControlMessage::ScmRights(batch)],
            MsgFlags::empty(),
            None,
        )?;
    }
    Ok(())
}

/// The old agent's side after [`send`]: resolves true when the successor says it is ready,
/// false if it went away first (then nothing changes).
pub async fn wait_ready(stream: UnixStream) -> bool {
    use tokio::io::AsyncReadExt;
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let Ok(mut stream) = tokio::net::UnixStream::from_std(stream) else { return false };
    let mut b = [0u8; 1];
    matches!(stream.read(&mut b).await, Ok(1) if b[0] == b'R')
}

/// What the new agent received, and the line back to the old one.
pub struct Received {
    /// The predecessor's eBPF map layout version.
    pub map_layout: u32,
    /// The predecessor's process id (logs).
    pub predecessor_pid: u32,
    /// The descriptors and what each is.
    pub items: Vec<(Role, OwnedFd)>,
    /// The line back to the predecessor, to tell it to drain once this agent is ready.
    pub predecessor: Predecessor,
}

/// The connection to the agent this one takes over from.
pub struct Predecessor {
    stream: UnixStream,
}

impl Predecessor {
    /// Tells the old agent to stop accepting and drain.
    pub fn ready(self) -> Result<(), HandoverError> {
        (&self.stream).write_all(b"R")?;
        Ok(())
    }
}

/// Connects to a running agent at `path` and takes its descriptors; `None` when no agent
/// answers there (first start, or the previous one is gone).
pub fn take_over(path: &Path) -> Result<Option<Received>, HandoverError> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(source) => return Err(HandoverError::Socket { path: path.to_owned(), source }),
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    receive(stream).map(Some)
}

/// The new agent's side of the transfer on a connected stream.
pub fn receive(stream: UnixStream) -> Result<Received, HandoverError> {
    let mut len = [0u8; 4];
    (&stream).read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER {
        return Err(HandoverError::Malformed(format!("description of {len} bytes")));
    }
    // Exactly the header's bytes: a read running into the first `F` would take its descriptors
    // with no room for them, and the kernel would close them.
    let mut json = vec![0u8; len as usize];
    (&stream).read_exact(&mut json)?;
    let header: Header = serde_json::from_slice(&json)?;
    if header.protocol != PROTOCOL {
        return Err(HandoverError::Protocol { theirs: header.protocol });
    }
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(header.roles.len());
    while fds.len() < header.roles.len() {
        let mut byte = [0u8; 1];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        let mut got = 0;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: SCM_RIGHTS just installed these descriptors in this process; nothing
                    // else owns them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    got += 1;
                }
            }
        }
        if msg.bytes == 0 {
            return Err(HandoverError::Malformed(format!(
                "connection closed after {} of {} descriptors",
                fds.len(),
                header.roles.len()
            )));
        }
        if truncated || got == 0 {
            return Err(HandoverError::Malformed(
                "descriptors lost in transit (out of file descriptors? raise the agent's limit)".into(),
            ));
        }
    }
    if fds.len() != header.roles.len() {
        return Err(HandoverError::Malformed(format!("{} descriptors for {} roles", fds.len(), header.roles.len())));
    }
    stream.set_read_timeout(None)?;
    Ok(Received {
        map_layout: header.map_layout,
        predecessor_pid: header.pid,
        items: header.roles.into_iter().zip(fds).collect(),
        predecessor: Predecessor { stream },
    })
}

/// The listening end of the handover socket, held by the agent that serves the node.
pub struct Server {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    inode: u64,
    /// After a handover the file at `path` is the successor's.
    leave_file: bool,
}

impl Server {
    /// Binds `path`, replacing a socket file nobody answers on (a crashed agent's) or one the
    /// predecessor this agent took over from still holds (it has stopped accepting). Call only
    /// after [`take_over`] found nobody or completed.
    pub fn bind(path: &Path) -> Result<Server, HandoverError> {
        let err = |source| HandoverError::Socket { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
        // Owner only: whoever connects receives every listening socket of the node.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        let inode = std::fs::metadata(path).map_err(err)?.ino();
        Ok(Server { listener, path: path.to_owned(), inode, leave_file: false })
    }

    /// The next successor asking to take over, as a blocking stream ready for [`send`].
    pub async fn accept(&self) -> std::io::Result<UnixStream> {
        let (stream, _) = self.listener.accept().await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the listener but leaves the socket file: after a handover it is the successor's.
    pub fn leave_file(mut self) {
        self.leave_file = true;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A successor binds its own socket at the same path; remove the file only if it is still ours.
        if !self.leave_file && std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Received descriptors sorted by what they are, taken one by one as the new agent rebuilds
/// its state; whatever is left unclaimed is closed when this is dropped.
#[derive(Default)]
pub struct Inherited {
    /// In-pod listeners by (namespace, name): (netns, cgroup, socket).
    pub pods: HashMap<(String, String), (PathBuf, PathBuf, OwnedFd)>,
    /// NodePort listeners by port.
    pub nodeports: HashMap<u16, OwnedFd>,
    /// Gateway listeners by port: (namespace, name, socket).
    pub gateways: HashMap<u16, (String, String, OwnedFd)>,
    /// The admin listener.
    pub admin: Option<OwnedFd>,
    /// eBPF maps by name.
    pub maps: HashMap<String, OwnedFd>,
    /// BPF links: (program name, link).
    pub links: Vec<(String, OwnedFd)>,
}

impl Inherited {
    /// Sorts received descriptors by role.
    pub fn new(items: Vec<(Role, OwnedFd)>) -> Inherited {
        let mut i = Inherited::default();
        for (role, fd) in items {
            match role {
                Role::Pod { namespace, name, netns, cgroup } => {
                    i.pods.insert((namespace, name), (netns, cgroup, fd));
                }
                Role::NodePort { port } => {
                    i.nodeports.insert(port, fd);
                }
                Role::Gateway { port, namespace, name } => {
                    i.gateways.insert(port, (namespace, name, fd));
                }
                Role::Admin => i.admin = Some(fd),
                Role::BpfMap { name } => {
                    i.maps.insert(name, fd);
                }
                Role::BpfLink { program } => i.links.push((program, fd)),
            }
        }
        i
    }

    /// A listening socket received from the predecessor, ready for tokio.
    pub fn listener(fd: OwnedFd) -> std::io::Result<tokio::net::TcpListener> {
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn descriptors_arrive_in_order_with_their_roles_across_batches() {
        let (a, b) = UnixStream::pair().expect("pair");
        // More than one sendmsg batch, every descriptor distinguishable by its port.
        let listeners: Vec<std::net::TcpListener> =
            (0..MAX_FDS_PER_MESSAGE + 7).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let items: Vec<(Role, OwnedFd)> = listeners
            .iter()
            .map(|l| {
                let port = l.local_addr().expect("addr").port();
                (Role::NodePort { port }, l.as_fd().try_clone_to_owned().expect("dup"))
            })
            .collect();
        let offer = Offer { map_layout: 7, items };
        let sender = std::thread::spawn(move || send(&a, &offer).map(|()| a));
        let received = receive(b).expect("receive");
        let _a = sender.join().expect("sender thread").expect("send");
        assert_eq!(received.map_layout, 7);
        assert_eq!(received.items.len(), listeners.len());
        for ((role, fd), l) in received.items.into_iter().zip(&listeners) {
            let got = std::net::TcpListener::from(fd).local_addr().expect("addr").port();
            assert_eq!(role, Role::NodePort { port: got }, "role and descriptor out of step");
            assert_eq!(got, l.local_addr().expect("addr").port());
        }
    }

    #[test]
    fn a_sender_that_dies_half_way_is_an_error_not_a_hang() {
        let (a, b) = UnixStream::pair().expect("pair");
        let header = Header { protocol: PROTOCOL, map_layout: 1, pid: 1, roles: vec![Role::Admin] };
        let json = serde_json::to_vec(&header).expect("json");
        (&a).write_all(&(json.len() as u32).to_be_bytes()).expect("len");
        (&a).write_all(&json).expect("json");
        drop(a);
        assert!(matches!(receive(b), Err(HandoverError::Malformed(_))));
    }

    #[test]
    fn another_protocol_is_refused() {
        let (a, b) = UnixStream::pair().expect("pair");
        let json =
            serde_json::to_vec(&Header { protocol: PROTOCOL + 1, map_layout: 1, pid: 1, roles: vec![] }).expect("json");
        (&a).write_all(&(json.len() as u32).to_be_bytes()).expect("len");
        (&a).write_all(&json).expect("json");
        assert!(matches!(receive(b), Err(HandoverError::Protocol { .. })));
    }
}
