//! Listeners inside pods' network namespaces (ztunnel's "in-pod" mode).
//!
//! connect4 rewrites an enrolled pod's connection to 127.0.0.1:15001 *in the pod's own network
//! namespace*. The node proxy opens that listener from the host: a short-lived thread enters the
//! pod's netns, creates and binds the socket, and leaves; the socket stays in the pod's netns while
//! the proxy (in the host netns) accepts on it. The source workload is therefore known from which
//! listener accepted, and cannot be forged by anything the pod sends.
use std::{
    fs::File,
    net::{SocketAddr, TcpListener as StdTcpListener},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use nix::sched::{setns, CloneFlags};
use thiserror::Error;

/// Why a listener could not be opened in a pod's network namespace.
#[derive(Debug, Error)]
pub enum InPodError {
    #[error("cannot open network namespace {path}: {source}")]
    /// The netns file cannot be opened (the pod is gone, or the path is wrong).
    OpenNetns {
        /// The netns path.
        path: PathBuf,
        /// The open error.
        source: std::io::Error,
    },
    #[error(
        "cannot enter network namespace {path}: {source}; the agent needs CAP_SYS_ADMIN (and hostPID on Kubernetes)"
    )]
    /// `setns()` into it failed.
    Setns {
        /// The netns path.
        path: PathBuf,
        /// The kernel's error.
        source: nix::Error,
    },
    #[error("cannot listen on {addr} in network namespace {path}: {source}")]
    /// The listener could not be bound inside it.
    Bind {
        /// The netns path.
        path: PathBuf,
        /// The address (`127.0.0.1:15001`).
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    #[error("listener thread for {path} died")]
    /// The thread that enters the netns could not start or panicked.
    Thread {
        /// The netns path.
        path: PathBuf,
    },
}

/// Runs `f` with the calling thread inside the network namespace at `netns`, on a fresh thread so
/// no other task ever observes the switched namespace.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, InPodError> + Send + 'static,
) -> Result<T, InPodError> {
    let path = netns.to_path_buf();
    let file = File::open(&path).map_err(|source| InPodError::OpenNetns { path: path.clone(), source })?;
    let thread_path = path.clone();
    std::thread::Builder::new()
        .name("mesh-netns".into())
        .spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|source| InPodError::Setns { path: thread_path, source })?;
            f()
        })
        .map_err(|_| InPodError::Thread { path: path.clone() })?
        .join()
        .map_err(|_| InPodError::Thread { path })?
}

/// A listening socket bound to `addr` inside the network namespace at `netns`.
pub fn listen_in_netns(netns: &Path, addr: SocketAddr) -> Result<StdTcpListener, InPodError> {
    let path = netns.to_path_buf();
    in_netns(netns, move || {
        let bind = || -> std::io::Result<StdTcpListener> {
            // The loopback interface of a fresh netns is down; bringing it up is the pod
            // runtime's job, so a failure here says the pod is not ready rather than fixing it.
            let l = StdTcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        bind().map_err(|source| InPodError::Bind { path, addr, source })
    })
}
