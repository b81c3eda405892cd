//! The node's ingress listeners (NodePorts, Gateway ports): one set type for both, so opening,
//! closing, re-binding a port whose service or Gateway changed, retrying a port that could not be
//! bound and handing sockets over to a successor work the same way for every kind.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
};

use tokio::{net::TcpListener, task::JoinHandle};

/// A port served by the set: what it serves, the accept task, and a duplicate of the listening
/// socket to hand over to a successor.
struct Serving<W> {
    what: W,
    task: JoinHandle<()>,
    fd: OwnedFd,
}

/// One listener per port, each serving a `W` (a Service port, a Gateway...).
pub struct ListenerSet<W> {
    /// What the set serves, for logs ("NodePort", "Gateway").
    kind: &'static str,
    bind: IpAddr,
    running: HashMap<u16, Serving<W>>,
    /// Sockets handed over by a predecessor, claimed by port as the set is reconciled.
    inherited: HashMap<u16, OwnedFd>,
    /// Ports that were wanted but could not be bound at the last reconcile (retried).
    failed: Vec<u16>,
}

impl<W: Clone + PartialEq + std::fmt::Display> ListenerSet<W> {
    /// An empty set binding on `bind`, holding sockets handed over by a predecessor.
    pub fn new(kind: &'static str, bind: IpAddr, inherited: HashMap<u16, OwnedFd>) -> Self {
        ListenerSet { kind, bind, running: HashMap::new(), inherited, failed: Vec::new() }
    }

    /// Makes the set serve exactly `wanted` (port → what). A port no longer wanted, or whose
    /// `what` changed, is closed first — its accept task awaited, so its socket is gone and the
    /// port can be bound again at once; connections already accepted keep running. A port that
    /// cannot be bound is logged and retried at the next reconcile (see [`ListenerSet::has_failed`]).
    pub async fn reconcile(
        &mut self,
        wanted: &HashMap<u16, W>,
        serve: impl Fn(TcpListener, u16, &W) -> JoinHandle<()>,
    ) {
        let stale: Vec<u16> =
            self.running.iter().filter(|(p, s)| wanted.get(*p) != Some(&s.what)).map(|(p, _)| *p).collect();
        for port in stale {
            if let Some(Serving { what, task, fd }) = self.running.remove(&port) {
                drop(fd);
                task.abort();
                let _ = task.await;
                tracing::info!(kind = self.kind, port, serving = %what, "listener closed");
            }
        }
        self.failed.clear();
        let mut ports: Vec<(&u16, &W)> = wanted.iter().filter(|(p, _)| !self.running.contains_key(*p)).collect();
        ports.sort_by_key(|(p, _)| **p);
        for (&port, what) in ports {
            let addr = SocketAddr::new(self.bind, port);
            let listener = match self.inherited.remove(&port) {
                Some(fd) => crate::handover::Inherited::listener(fd),
                None => TcpListener::bind(addr).await,
            };
            match listener.and_then(|l| Ok((l.as_fd().try_clone_to_owned()?, l))) {
                Ok((fd, l)) => {
                    tracing::info!(kind = self.kind, %addr, serving = %what, "listening");
                    let task = serve(l, port, what);
                    self.running.insert(port, Serving { what: what.clone(), task, fd });
                }
                Err(e) => {
                    tracing::error!(kind = self.kind, %addr, serving = %what, error = %e, "cannot listen (retried)");
                    self.failed.push(port);
                }
            }
        }
    }

    /// Some wanted port could not be bound at the last reconcile.
    pub fn has_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Duplicates of every listening socket, with its port and what it serves.
    pub fn export(&self) -> std::io::Result<Vec<(u16, W, OwnedFd)>> {
        self.running.iter().map(|(p, s)| Ok((*p, s.what.clone(), s.fd.try_clone()?))).collect()
    }

    /// Closes handed-over sockets nothing claimed.
    pub fn inherited_done(&mut self) {
        self.inherited.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves each connection one line: what the listener serves.
    fn say(l: TcpListener, _port: u16, what: &&'static str) -> JoinHandle<()> {
        let what = *what;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(what.as_bytes()).await;
            }
        })
    }

    async fn ask(port: u16) -> std::io::Result<String> {
        let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_changed_port_is_rebound_at_once_and_a_failed_one_is_retried() {
        let mut set = ListenerSet::new("test", IpAddr::V4(Ipv4Addr::LOCALHOST), HashMap::new());
        let (a, b) = (free_port(), free_port());
        set.reconcile(&HashMap::from([(a, "gw-1")]), say).await;
        assert_eq!(ask(a).await.expect("a"), "gw-1");
        // Another Gateway on the same port: the old accept task is gone before the port is bound
        // again (binding right after abort() alone fails with EADDRINUSE: the task still holds
        // its socket until the runtime drops it).
        set.reconcile(&HashMap::from([(a, "gw-2")]), say).await;
        assert!(!set.has_failed(), "re-binding a changed port failed");
        assert_eq!(ask(a).await.expect("a"), "gw-2");
        // A port someone else holds: logged, not served, retried by the next reconcile.
        let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, b)).expect("bind b");
        let wanted = HashMap::from([(a, "gw-2"), (b, "np")]);
        set.reconcile(&wanted, say).await;
        assert!(set.has_failed());
        drop(squatter);
        set.reconcile(&wanted, say).await;
        assert!(!set.has_failed());
        assert_eq!(ask(b).await.expect("b"), "np");
        let mut exported: Vec<(u16, &str)> =
            set.export().expect("export").into_iter().map(|(p, w, _)| (p, w)).collect();
        exported.sort();
        let mut expect = vec![(a, "gw-2"), (b, "np")];
        expect.sort();
        assert_eq!(exported, expect);
        // Not wanted any more: closed.
        set.reconcile(&HashMap::new(), say).await;
        assert!(ask(a).await.is_err(), "port {a} still served");
        assert!(set.export().expect("export").is_empty());
    }

    /// Issue 16: a Gateway whose port changed is served on the new port at once and no longer
    /// on the old one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_gateway_whose_port_changed_moves_to_the_new_port() {
        let mut set = ListenerSet::new("test", IpAddr::V4(Ipv4Addr::LOCALHOST), HashMap::new());
        let (a, b) = (free_port(), free_port());
        set.reconcile(&HashMap::from([(a, "gw")]), say).await;
        assert_eq!(ask(a).await.expect("a"), "gw");
        set.reconcile(&HashMap::from([(b, "gw")]), say).await;
        assert!(!set.has_failed());
        assert_eq!(ask(b).await.expect("b"), "gw");
        assert!(ask(a).await.is_err(), "old port {a} still served");
        // And back: the port just closed can be bound again at once.
        set.reconcile(&HashMap::from([(a, "gw")]), say).await;
        assert!(!set.has_failed(), "re-binding the old port failed");
        assert_eq!(ask(a).await.expect("a"), "gw");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_inherited_socket_is_served_instead_of_binding() {
        let port = free_port();
        let std_l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind");
        std_l.set_nonblocking(true).expect("nonblocking");
        let fd: OwnedFd = std_l.into();
        let mut set = ListenerSet::new("test", IpAddr::V4(Ipv4Addr::LOCALHOST), HashMap::from([(port, fd)]));
        // Binding would fail (the inherited socket holds the port): serving it proves it was used.
        set.reconcile(&HashMap::from([(port, "handed")]), say).await;
        assert!(!set.has_failed());
        assert_eq!(ask(port).await.expect("port"), "handed");
    }
}
