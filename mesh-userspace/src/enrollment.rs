//! The node's pod enrollments as a state machine (ztunnel's in-pod state manager): which pods
//! have a proxy listener in their network namespace and their cgroup in the kernel's enrollment
//! map, driven toward the registry's wanted set. The kernel map and the listener factory are
//! traits, so the ordering rules below are unit-tested with fakes; the agent plugs in the eBPF
//! map and real in-pod listeners.
//!
//! Ordering, and why:
//! - enroll: listener open and accepting **before** the cgroup enters the map (a connect redirected
//!   to a port nobody listens on would be refused);
//! - unenroll: map entry removed **before** the listener stops (same reason, the other way);
//! - adopt: a listener handed over by the previous agent for the same pod, netns and cgroup is
//!   reused instead of binding a new one (connections queued on it are not lost); one for another
//!   netns or cgroup (the pod was recreated) is not;
//! - retry: a pod that cannot be enrolled yet (netns not ready, map full) is counted and tried
//!   again on the next reconcile, and a listener opened for a failed map insert is stopped.
use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use mesh_common::{Enrollment, PROXY_OUTBOUND_PORT};

use crate::registry::Workload;

/// A pod's identity: (namespace, name).
pub type PodKey = (String, String);

/// The kernel's enrollment map.
pub trait KernelEnrollments {
    /// Puts the pod's cgroup in the map: its connects to service VIPs are redirected from now on.
    fn enroll(&self, cgroup_id: u64, netns_cookie: u64, enrollment: Enrollment, name: String) -> Result<()>;
    /// Removes the pod's cgroup: its new connects go where they were addressed.
    fn unenroll(&self, cgroup_id: u64) -> Result<()>;
}

/// A listener opened in a pod's network namespace, not serving yet.
pub struct OpenedListener<L> {
    /// The listener itself.
    pub listener: L,
    /// The pod netns cookie the listener lives in (what the kernel keys redirects by).
    pub netns_cookie: u64,
    /// A duplicate of the listening socket, kept for a successor agent.
    pub fd: OwnedFd,
}

/// Opens and serves the proxy's listeners inside pods.
pub trait PodListeners {
    /// An opened listener.
    type Listener;
    /// A serving listener; dropping it does not stop it, `stop` does.
    type Serving;
    /// Opens the pod's listener, or adopts `inherited` (a predecessor's socket for this pod).
    fn open(&self, netns: &Path, inherited: Option<OwnedFd>) -> Result<OpenedListener<Self::Listener>>;
    /// The inode of the pod's cgroup directory (its cgroup id).
    fn cgroup_id(&self, cgroup: &Path) -> Result<u64>;
    /// Starts accepting; connections are attributed to `workload` (swapped when labels change).
    fn serve(&self, listener: Self::Listener, workload: Arc<ArcSwap<Workload>>, netns_cookie: u64) -> Self::Serving;
    /// Stops accepting; connections already accepted run on.
    fn stop(&self, serving: &Self::Serving);
}

/// One enrolled pod.
struct Enrolled<S> {
    workload: Arc<ArcSwap<Workload>>,
    netns: PathBuf,
    cgroup: PathBuf,
    cgroup_id: u64,
    netns_cookie: u64,
    serving: S,
    fd: OwnedFd,
}

/// What is known of one enrolled pod (`/config_dump`).
pub struct PodState<'a> {
    /// The workload its listener reports.
    pub workload: &'a Arc<ArcSwap<Workload>>,
    /// Its network namespace.
    pub netns: &'a Path,
    /// Its network namespace's cookie.
    pub netns_cookie: u64,
    /// Its cgroup.
    pub cgroup: &'a Path,
    /// Its cgroup id (the enrollment map key).
    pub cgroup_id: u64,
}

/// What one reconcile did, for the caller's logs and counters.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Pods enrolled, with their cgroup id and network namespace.
    pub enrolled: Vec<(PodKey, u64, PathBuf)>,
    /// Pods that could not be enrolled yet (retried on the next reconcile), with why.
    pub failed: Vec<(PodKey, String)>,
    /// Pods unenrolled (gone from the wanted set, or recreated with another netns/cgroup).
    pub removed: Vec<PodKey>,
    /// Pods whose kernel map entry could not be removed, with why.
    pub unenroll_errors: Vec<(PodKey, String)>,
}

/// A pod the registry wants enrolled on this node.
pub struct Wanted<'a> {
    /// Its workload (name, namespace, labels).
    pub workload: &'a Arc<Workload>,
    /// Its network namespace.
    pub netns: &'a Path,
    /// Its cgroup.
    pub cgroup: &'a Path,
}

/// The enrollment state machine.
pub struct Enrollments<K, L: PodListeners> {
    kernel: K,
    listeners: L,
    enrolled: HashMap<PodKey, Enrolled<L::Serving>>,
    failed: usize,
    next_workload_id: u32,
    /// Listeners a predecessor handed over, claimed by the pods they belong to.
    inherited: HashMap<PodKey, (PathBuf, PathBuf, OwnedFd)>,
}

impl<K: KernelEnrollments, L: PodListeners> Enrollments<K, L> {
    /// An empty state over `kernel` and `listeners`, with a predecessor's pod listeners.
    pub fn new(kernel: K, listeners: L, inherited: HashMap<PodKey, (PathBuf, PathBuf, OwnedFd)>) -> Self {
        Enrollments { kernel, listeners, enrolled: HashMap::new(), failed: 0, next_workload_id: 0, inherited }
    }

    /// How many pods are enrolled.
    pub fn len(&self) -> usize {
        self.enrolled.len()
    }

    /// Whether no pod is enrolled.
    pub fn is_empty(&self) -> bool {
        self.enrolled.is_empty()
    }

    /// Every enrolled pod.
    pub fn views(&self) -> impl Iterator<Item = PodState<'_>> {
        self.enrolled.values().map(|p| PodState {
            workload: &p.workload,
            netns: &p.netns,
            netns_cookie: p.netns_cookie,
            cgroup: &p.cgroup,
            cgroup_id: p.cgroup_id,
        })
    }

    /// The cgroup ids of the enrolled pods.
    pub fn cgroup_ids(&self) -> std::collections::HashSet<u64> {
        self.enrolled.values().map(|p| p.cgroup_id).collect()
    }

    /// Whether the last reconcile left pods it could not enroll (retry soon).
    pub fn has_failed(&self) -> bool {
        self.failed > 0
    }

    /// Drops the handed-over listeners no pod claimed; the predecessor closes its copies.
    pub fn inherited_done(&mut self) {
        self.inherited.clear();
    }

    /// Duplicates of every enrolled pod's listening socket, for a successor.
    pub fn export(&self) -> std::io::Result<Vec<(PodKey, PathBuf, PathBuf, OwnedFd)>> {
        self.enrolled
            .iter()
            .map(|(k, p)| Ok((k.clone(), p.netns.clone(), p.cgroup.clone(), p.fd.try_clone()?)))
            .collect()
    }

    /// Drives the node to exactly `wanted`: stale pods out first, then new ones in.
    pub fn reconcile<'a>(&mut self, wanted: impl IntoIterator<Item = Wanted<'a>>) -> Outcome {
        let wanted: HashMap<PodKey, Wanted<'a>> =
            wanted.into_iter().map(|w| ((w.workload.namespace.clone(), w.workload.name.clone()), w)).collect();
        let mut out = Outcome::default();
        let mut stale: Vec<PodKey> = self
            .enrolled
            .iter()
            .filter(|(k, e)| wanted.get(*k).is_none_or(|w| e.netns != w.netns || e.cgroup != w.cgroup))
            .map(|(k, _)| k.clone())
            .collect();
        stale.sort();
        for key in stale {
            self.unenroll(&key, &mut out);
        }
        self.failed = 0;
        let mut keys: Vec<&PodKey> = wanted.keys().collect();
        keys.sort();
        for key in keys {
            let w = &wanted[key];
            if let Some(pod) = self.enrolled.get(key) {
                // Same pod, new labels: the listener reports the new workload, no re-enrollment.
                if **pod.workload.load() != **w.workload {
                    pod.workload.store(w.workload.clone());
                }
                continue;
            }
            match self.enroll(key, w) {
                Ok(pod) => {
                    out.enrolled.push((key.clone(), pod.cgroup_id, pod.netns.clone()));
                    self.enrolled.insert(key.clone(), pod);
                }
                Err(e) => {
                    out.failed.push((key.clone(), format!("{e:#}")));
                    self.failed += 1;
                }
            }
        }
        out
    }

    /// Unenrolls every pod (the agent stops with no successor).
    pub fn unenroll_all(&mut self) -> Outcome {
        let mut out = Outcome::default();
        let mut keys: Vec<PodKey> = self.enrolled.keys().cloned().collect();
        keys.sort();
        for key in keys {
            self.unenroll(&key, &mut out);
        }
        out
    }

    fn enroll(&mut self, key: &PodKey, w: &Wanted<'_>) -> Result<Enrolled<L::Serving>> {
        let inherited = match self.inherited.remove(key) {
            Some((netns, cgroup, fd)) if netns == w.netns && cgroup == w.cgroup => Some(fd),
            // The pod was recreated: the old socket lives in a netns that is gone.
            _ => None,
        };
        let cgroup_id = self.listeners.cgroup_id(w.cgroup).with_context(|| format!("cgroup {}", w.cgroup.display()))?;
        let opened = self.listeners.open(w.netns, inherited)?;
        let workload = Arc::new(ArcSwap::new(w.workload.clone()));
        let serving = self.listeners.serve(opened.listener, workload.clone(), opened.netns_cookie);
        self.next_workload_id = self.next_workload_id.wrapping_add(1);
        let enrollment = Enrollment { workload_id: self.next_workload_id, proxy_port: PROXY_OUTBOUND_PORT, _pad: 0 };
        let name = format!("{}/{}", key.0, key.1);
        if let Err(e) = self.kernel.enroll(cgroup_id, opened.netns_cookie, enrollment, name) {
            self.listeners.stop(&serving);
            return Err(e);
        }
        Ok(Enrolled {
            workload,
            netns: w.netns.to_owned(),
            cgroup: w.cgroup.to_owned(),
            cgroup_id,
            netns_cookie: opened.netns_cookie,
            serving,
            fd: opened.fd,
        })
    }

    fn unenroll(&mut self, key: &PodKey, out: &mut Outcome) {
        let Some(pod) = self.enrolled.remove(key) else { return };
        if let Err(e) = self.kernel.unenroll(pod.cgroup_id) {
            out.unenroll_errors.push((key.clone(), format!("{e:#}")));
        }
        self.listeners.stop(&pod.serving);
        out.removed.push(key.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::HashSet, rc::Rc};

    use super::*;

    /// Every call the fakes see, in order.
    type Log = Rc<RefCell<Vec<String>>>;

    struct FakeKernel {
        log: Log,
        /// cgroup ids whose insert fails (a full map).
        refuse: RefCell<HashSet<u64>>,
    }

    impl KernelEnrollments for FakeKernel {
        fn enroll(&self, cgroup_id: u64, cookie: u64, _: Enrollment, name: String) -> Result<()> {
            if self.refuse.borrow().contains(&cgroup_id) {
                self.log.borrow_mut().push(format!("map-refused {name}"));
                anyhow::bail!("map full");
            }
            self.log.borrow_mut().push(format!("map+ {name} cgroup={cgroup_id} cookie={cookie}"));
            Ok(())
        }
        fn unenroll(&self, cgroup_id: u64) -> Result<()> {
            self.log.borrow_mut().push(format!("map- cgroup={cgroup_id}"));
            Ok(())
        }
    }

    struct FakeListeners {
        log: Log,
        /// netns paths whose listener cannot be opened yet (pod not ready).
        not_ready: RefCell<HashSet<PathBuf>>,
    }

    impl PodListeners for FakeListeners {
        type Listener = String;
        type Serving = String;
        fn open(&self, netns: &Path, inherited: Option<OwnedFd>) -> Result<OpenedListener<String>> {
            if self.not_ready.borrow().contains(netns) {
                self.log.borrow_mut().push(format!("open-failed {}", netns.display()));
                anyhow::bail!("netns not ready");
            }
            let how = if inherited.is_some() { "adopt" } else { "bind" };
            self.log.borrow_mut().push(format!("{how} {}", netns.display()));
            let fd = match inherited {
                Some(fd) => fd,
                None => std::fs::File::open("/dev/null")?.into(),
            };
            Ok(OpenedListener { listener: netns.display().to_string(), netns_cookie: cookie(netns), fd })
        }
        fn cgroup_id(&self, cgroup: &Path) -> Result<u64> {
            Ok(cookie(cgroup) + 1000)
        }
        fn serve(&self, listener: String, workload: Arc<ArcSwap<Workload>>, _: u64) -> String {
            self.log.borrow_mut().push(format!("serve {listener} as {}", workload.load().name));
            listener
        }
        fn stop(&self, serving: &String) {
            self.log.borrow_mut().push(format!("stop {serving}"));
        }
    }

    /// A stable number per path (the fakes' cookie and cgroup id).
    fn cookie(p: &Path) -> u64 {
        p.to_string_lossy().bytes().map(u64::from).sum()
    }

    fn workload(name: &str, version: &str) -> Arc<Workload> {
        let mut w = Workload::external(std::net::Ipv4Addr::new(10, 0, 0, 1), "default");
        w.name = name.into();
        w.labels =
            [("app".to_string(), name.to_string()), ("version".to_string(), version.to_string())].into_iter().collect();
        w.enroll = true;
        Arc::new(w)
    }

    fn machine(
        inherited: HashMap<PodKey, (PathBuf, PathBuf, OwnedFd)>,
    ) -> (Enrollments<FakeKernel, FakeListeners>, Log) {
        let log: Log = Default::default();
        let kernel = FakeKernel { log: log.clone(), refuse: Default::default() };
        let listeners = FakeListeners { log: log.clone(), not_ready: Default::default() };
        (Enrollments::new(kernel, listeners, inherited), log)
    }

    fn want<'a>(w: &'a Arc<Workload>, netns: &'a Path, cgroup: &'a Path) -> Wanted<'a> {
        Wanted { workload: w, netns, cgroup }
    }

    fn taken(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.borrow_mut())
    }

    #[test]
    fn a_pod_is_listened_for_before_it_is_redirected_and_redirected_no_more_before_the_listener_stops() {
        let (mut m, log) = machine(HashMap::new());
        let a = workload("a", "v1");
        let (ns, cg) = (PathBuf::from("/ns/a"), PathBuf::from("/cg/a"));
        let out = m.reconcile([want(&a, &ns, &cg)]);
        assert_eq!(out.enrolled.len(), 1);
        assert_eq!(
            taken(&log),
            [
                "bind /ns/a".to_string(),
                "serve /ns/a as a".into(),
                format!("map+ default/a cgroup={} cookie={}", cookie(&cg) + 1000, cookie(&ns)),
            ]
        );
        let out = m.reconcile([]);
        assert_eq!(out.removed, [("default".to_string(), "a".to_string())]);
        assert_eq!(taken(&log), [format!("map- cgroup={}", cookie(&cg) + 1000), "stop /ns/a".into()]);
        assert!(m.is_empty());
    }

    #[test]
    fn reconciling_the_same_set_again_touches_nothing_and_a_label_change_swaps_the_workload_in_place() {
        let (mut m, log) = machine(HashMap::new());
        let (ns, cg) = (PathBuf::from("/ns/a"), PathBuf::from("/cg/a"));
        let v1 = workload("a", "v1");
        m.reconcile([want(&v1, &ns, &cg)]);
        let served = m.enrolled[&("default".to_string(), "a".to_string())].workload.clone();
        taken(&log);
        assert_eq!(m.reconcile([want(&v1, &ns, &cg)]), Outcome::default());
        let v2 = workload("a", "v2");
        assert_eq!(m.reconcile([want(&v2, &ns, &cg)]), Outcome::default());
        assert!(taken(&log).is_empty(), "no listener or map change for a label change");
        assert_eq!(served.load().labels.get("version").map(String::as_str), Some("v2"));
    }

    #[test]
    fn a_recreated_pod_is_unenrolled_then_enrolled_in_its_new_netns() {
        let (mut m, log) = machine(HashMap::new());
        let a = workload("a", "v1");
        let (ns1, ns2, cg) = (PathBuf::from("/ns/a1"), PathBuf::from("/ns/a2"), PathBuf::from("/cg/a"));
        m.reconcile([want(&a, &ns1, &cg)]);
        taken(&log);
        let out = m.reconcile([want(&a, &ns2, &cg)]);
        assert_eq!(out.removed.len(), 1);
        assert_eq!(out.enrolled.len(), 1);
        let log = taken(&log);
        assert_eq!(log[0], format!("map- cgroup={}", cookie(&cg) + 1000));
        assert_eq!(log[1], "stop /ns/a1");
        assert_eq!(log[2], "bind /ns/a2");
        assert!(log[4].starts_with("map+ default/a"), "{log:?}");
    }

    #[test]
    fn a_predecessors_listener_is_adopted_only_for_the_same_netns_and_cgroup() {
        let fd = |_: ()| -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        let inherited: HashMap<PodKey, (PathBuf, PathBuf, OwnedFd)> = [
            (("default".into(), "a".into()), ("/ns/a".into(), "/cg/a".into(), fd(()))),
            // b was recreated after the predecessor exported its socket.
            (("default".into(), "b".into()), ("/ns/b-old".into(), "/cg/b".into(), fd(()))),
        ]
        .into_iter()
        .collect();
        let (mut m, log) = machine(inherited);
        let (a, b) = (workload("a", "v1"), workload("b", "v1"));
        let (nsa, cga, nsb, cgb) =
            (PathBuf::from("/ns/a"), PathBuf::from("/cg/a"), PathBuf::from("/ns/b"), PathBuf::from("/cg/b"));
        let out = m.reconcile([want(&a, &nsa, &cga), want(&b, &nsb, &cgb)]);
        assert_eq!(out.enrolled.len(), 2);
        let log = taken(&log);
        assert!(log.contains(&"adopt /ns/a".to_string()), "{log:?}");
        assert!(log.contains(&"bind /ns/b".to_string()), "{log:?}");
        // Unclaimed handed-over sockets are closed once the node is reconciled.
        m.inherited_done();
        assert!(m.inherited.is_empty());
        assert_eq!(m.export().map(|e| e.len()).ok(), Some(2));
    }

    #[test]
    fn a_pod_not_ready_is_retried_and_a_refused_map_insert_stops_its_listener() {
        let (mut m, log) = machine(HashMap::new());
        let (a, b) = (workload("a", "v1"), workload("b", "v1"));
        let (nsa, cga, nsb, cgb) =
            (PathBuf::from("/ns/a"), PathBuf::from("/cg/a"), PathBuf::from("/ns/b"), PathBuf::from("/cg/b"));
        m.listeners.not_ready.borrow_mut().insert(nsa.clone());
        m.kernel.refuse.borrow_mut().insert(cookie(&cgb) + 1000);
        let out = m.reconcile([want(&a, &nsa, &cga), want(&b, &nsb, &cgb)]);
        assert_eq!(out.failed.len(), 2, "{out:?}");
        assert!(m.has_failed());
        assert!(m.is_empty());
        let l = taken(&log);
        assert!(l.contains(&"open-failed /ns/a".to_string()), "{l:?}");
        let refused = l.iter().position(|e| e == "map-refused default/b");
        let stopped = l.iter().position(|e| e == "stop /ns/b");
        assert!(refused.is_some() && stopped > refused, "listener stopped after the refused insert: {l:?}");
        // The pods become ready: the retry enrolls both, and nothing is left failed.
        m.listeners.not_ready.borrow_mut().clear();
        m.kernel.refuse.borrow_mut().clear();
        let out = m.reconcile([want(&a, &nsa, &cga), want(&b, &nsb, &cgb)]);
        assert_eq!(out.enrolled.len(), 2, "{out:?}");
        assert!(!m.has_failed());
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn unenroll_all_removes_every_map_entry_before_stopping_each_listener() {
        let (mut m, log) = machine(HashMap::new());
        let (a, b) = (workload("a", "v1"), workload("b", "v1"));
        let (nsa, cga, nsb, cgb) =
            (PathBuf::from("/ns/a"), PathBuf::from("/cg/a"), PathBuf::from("/ns/b"), PathBuf::from("/cg/b"));
        m.reconcile([want(&a, &nsa, &cga), want(&b, &nsb, &cgb)]);
        taken(&log);
        let out = m.unenroll_all();
        assert_eq!(out.removed.len(), 2);
        let l = taken(&log);
        assert_eq!(l.len(), 4);
        for pair in l.chunks(2) {
            assert!(pair[0].starts_with("map- ") && pair[1].starts_with("stop "), "{l:?}");
        }
        assert!(m.is_empty());
    }
}
